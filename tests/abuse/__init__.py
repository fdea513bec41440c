"""The abuse and fault matrix (docs/reliability.md): one test per row, each beside a healthy neighbour fleet."""
