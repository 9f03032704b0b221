//! System containers: launching an init into namespaces, and supervising it.
