"""Defenses on the client side: noise and regularisers in local training, client-level DP."""
