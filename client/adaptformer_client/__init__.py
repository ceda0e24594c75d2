"""Client for the AdaptFormer Serve HTTP API."""
