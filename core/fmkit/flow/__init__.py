"""The math layer: states, the dataset contract, probability paths, couplings, sources, the training
objectives, solvers, sampling, likelihood and guidance. Imports nothing of the engine or the application."""
