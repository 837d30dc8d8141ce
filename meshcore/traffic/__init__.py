"""Traffic management: routes, destination rules, retries and outlier ejection for meshcore's waypoint."""
