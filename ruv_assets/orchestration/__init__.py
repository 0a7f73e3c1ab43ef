"""Orchestration: jobs, the schedule, the sensors and the daemon-less build."""
