//! Istio networking YAML (VirtualService, DestinationRule, Gateway): parsing with positions,
//! validation and the watched ConfigMap directory. OWNED BY THE ROUTING ENGINE WORK (stub).
