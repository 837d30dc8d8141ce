"""Traffic management for meshcore's waypoint: Gateway API routes and Istio's VirtualService and DestinationRule, retries, load balancing and outlier ejection."""
