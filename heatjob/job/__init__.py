"""The job: prepare and plan in the driver, explain units on workers, run them over Ray."""
