"""The server side: aggregation rules on stacked client updates."""
