"""Configuration in the shapes users already write (docs/configuration.md)."""
