"""Cogito-pipe: from raw audio to audited reasoning datasets."""
