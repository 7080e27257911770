"""The store a server runs on, as configured: the embedded one, or a ClickHouse cluster."""

from __future__ import annotations

from pathlib import Path

from ..config import Settings
from .base import FlowStore


def open_store(settings: Settings) -> FlowStore:
    store = settings.store
    if store.backend == "clickhouse":
        from .clickhouse_store import ClickHouseStore  # loaded only where it is used
        from .spool import Spool

        spool = Spool(Path(settings.data_dir) / "clickhouse-spool", int(store.clickhouse_spool_gb * 2**30))
        return ClickHouseStore(
            store.clickhouse_servers, store.clickhouse_cluster, store.clickhouse_database, spool=spool
        )
    from .duckdb_store import DuckDBStore

    return DuckDBStore(Path(settings.data_dir) / "sessions.duckdb")
