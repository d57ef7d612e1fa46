"""Battery and flexible-load dispatch: the LP builder (`problem`), the batched interior point solver
(`solver`, with its Triton kernel in `kernel`), the HiGHS reference (`highs`) and site tables (`io`)."""
