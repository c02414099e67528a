"""The scaling law, measured: a compute sweep of a model family, the fitted law, a held-out check."""
