"""A convolutional β-VAE on MNIST: model, loss, data, schedules and the stages' logic."""
