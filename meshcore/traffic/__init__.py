"""Traffic management: Gateway API routes attached to services, and choosing among them."""
