"""Loss functions as pure tensor maths: tensors in, tensors out, no models."""
