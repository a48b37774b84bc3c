"""The parties of a secure run, by rank: the client (rank 0) holds the token ids and alone learns
the logits; the server (rank 1) holds the weights; the dealer (rank 2) makes Beaver triples when
the profile's provider is TTP."""

CLIENT, SERVER, DEALER = 0, 1, 2
ROLES = {CLIENT: "client", SERVER: "server", DEALER: "dealer"}


def party_label(rank: int) -> str:
    """'client (rank 0)', 'server (rank 1)', 'dealer (rank 2)'."""
    return f"{ROLES.get(rank, 'party')} (rank {rank})"


__all__ = ["CLIENT", "DEALER", "ROLES", "SERVER", "party_label"]
