"""Schedules: how a loop nest runs (GPU kernel forms; CPU blocking and threads to come)."""
