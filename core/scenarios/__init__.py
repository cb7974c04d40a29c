"""Demo and benchmark data with planted truth: the Waterbirds-like birds, CIFAR-10 scenarios, annotation."""
