"""Private inference: the secure forward of a checkpoint under two real CrypTen parties.

Modules: `crypten_compat` (the only one importing CrypTen), `profile` (protocol and network
profiles), `parties` (processes, rendezvous, timeouts), `layers` (metered secure primitives),
`model` (the secure forward, block for block as `pi_lnfree.model`), `meter` (per-operator bytes,
rounds, seconds and the network latency model), `evaluate` (one `secure-eval` run end to end),
`fast_matmul` (exact int64 share products through float64 limbs), `costmodel` and `calibrate`
(costs predicted from calibrated per-primitive unit costs, without running the parties).
"""
