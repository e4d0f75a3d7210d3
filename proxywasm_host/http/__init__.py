"""The HTTP exchange vocabulary: backend-neutral scenarios and Envoy's stream profiles."""
