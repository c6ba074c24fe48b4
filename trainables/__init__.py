"""The science of vamp-study: data, layers, priors, models, training and evaluation of
"VAE with a VampPrior" (Tomczak & Welling, AISTATS 2018, arXiv 1705.07120).

Nothing here imports Ray or MLflow except :mod:`trainables.tune_trainable`.
"""
