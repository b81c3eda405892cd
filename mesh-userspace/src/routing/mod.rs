//! The pure routing engine (no IO): a route table compiled from (config, registry).
//! OWNED BY THE ROUTING ENGINE WORK (stub).
