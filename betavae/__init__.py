"""A convolutional β-VAE on MNIST: model, loss, data, schedules, training, evaluation and the trained-model API.

Importing the package loads nothing heavy; each module imports what it needs.
"""
