"""Getting a filter out of the test bench: cargo builds, OCI images, Istio and Envoy manifests."""
