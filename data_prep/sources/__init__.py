"""Adapters that turn source datasets into manifests."""
