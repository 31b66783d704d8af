"""Client-training engines: the interface, the shared client-update rules, and where they run
(one client at a time, stacked clients, or split over ranks)."""
