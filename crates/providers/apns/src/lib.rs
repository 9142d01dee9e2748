//! APNs (token auth, HTTP/2) provider for mesh-notify (work in progress).
