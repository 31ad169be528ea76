"""The daemon: the collection, notification and housekeeping loops on timers."""
