//! The one cache of a process's channels to OSDs.

use std::collections::HashMap;
use std::sync::Mutex;

use pocket_proto::OsdId;
use tonic::transport::Channel;

use crate::MAX_CACHED_CHANNELS;

/// Channels to OSDs by OSD id and address. TLS refuses a server whose
/// certificate is not the OSD's own.
pub(crate) struct Channels {
    tls: pocket_transport::Tls,
    channels: Mutex<HashMap<(OsdId, String), Channel>>,
}

impl Channels {
    pub(crate) fn new(tls: pocket_transport::Tls) -> Channels {
        Channels { tls, channels: Mutex::new(HashMap::new()) }
    }

    /// The channel to OSD `osd_id` at `addr`, opened (lazily) if new.
    pub(crate) fn get(&self, osd_id: OsdId, addr: &str) -> Result<Channel, pocket_transport::TlsError> {
        // Every change to the map is complete before the lock is released,
        // so a poisoned lock is consistent.
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let cache_key = (osd_id, addr.to_string());
        if let Some(channel) = channels.get(&cache_key) {
            return Ok(channel.clone());
        }
        if channels.len() >= MAX_CACHED_CHANNELS {
            // OSD addresses change on restarts; forget stale ones.
            channels.clear();
        }
        let name = pocket_transport::Identity::new(pocket_transport::Role::Osd, &format!("osd-{osd_id}")).dns_name();
        let channel = self.tls.channel(addr, &name)?;
        channels.insert(cache_key, channel.clone());
        Ok(channel)
    }
}
