"""Configuration in the shapes users already write (CONFIG.md)."""
