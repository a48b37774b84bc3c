"""The parties of a secure run, by rank: the client (rank 0) holds the token ids and alone learns
the logits; the server (rank 1) holds the weights; the dealer (rank 2) makes Beaver triples when
the profile's provider is TTP. Under SPU's 3-party profile (ABY3) rank 2 is a third computing
party, the helper, instead of a dealer."""

CLIENT, SERVER, DEALER = 0, 1, 2
ROLES = {CLIENT: "client", SERVER: "server", DEALER: "dealer"}
SPU_ROLES = {CLIENT: "client", SERVER: "server", 2: "helper"}


def party_label(rank: int, roles: dict[int, str] = ROLES) -> str:
    """'client (rank 0)', 'server (rank 1)', 'dealer (rank 2)' ('helper (rank 2)' with SPU_ROLES)."""
    return f"{roles.get(rank, 'party')} (rank {rank})"


__all__ = ["CLIENT", "DEALER", "ROLES", "SERVER", "SPU_ROLES", "party_label"]
