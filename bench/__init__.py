"""`make bench`: the service side by side with a direct `abatch` script, on the same mock."""
