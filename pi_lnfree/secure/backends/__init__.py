"""Backends of the decoder structure (`pi_lnfree.secure.structure`): what a tensor is and what each
operator costs. `base` holds the tensor plumbing shared by the tensor backends; `crypten_ops` is
the metered CrypTen engine; `recorder` traces calls by shape for the cost model; `torch64` is the
exact float64 reference that tests and the range audit use."""
