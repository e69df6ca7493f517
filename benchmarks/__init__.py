"""Speed and accuracy benchmarks; each prints ratios against a baseline measured in the same run."""
