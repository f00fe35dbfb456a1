"""The one local signer: the only process that reads this node's private key. Others ask it
over a Unix socket; it learns who asks from the kernel (SO_PEERCRED) and signs only what
that caller may say (`rules.decide`)."""
