"""Private inference: the secure forward of a checkpoint under real MPC parties (CrypTen, and
SecretFlow SPU in its own environment), and its cost predicted without running them.

The forward is written once, over an operations interface (`structure`), with one backend per
kind of tensor (`backends`: CrypTen CrypTensors, SPU values, float64 torch as the exact
reference, and a recorder of shapes for the cost model).

Around it: `crypten_compat` (the only module importing CrypTen), `profile` (protocol and network
profiles), `roles` (who holds what), `parties` and `watchdog` (processes, rendezvous, timeouts),
`layers` (metered secure primitives), `meter` and `result` (per-operator bytes, rounds, seconds,
the network latency model, the JSON shape), `evaluate` (one `secure-eval` run end to end),
`dealer`, `tuples`, `material` and `phases` (the TTP dealer and the offline/online split),
`fast_matmul` (exact int64 share products through float64 limbs), `approx` and `audit` (valid
input ranges of the approximations), `tokens` (the client's input), `spu_engine`, `spu_party`,
`spu_measure` and `spu_rendezvous` (the SPU engine's processes), and `costmodel`, `calibrate`,
`calls` and `cost_features` (costs predicted from calibrated per-primitive unit costs).
"""
