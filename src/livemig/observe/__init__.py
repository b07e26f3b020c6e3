"""What the guest saw: heartbeat collection and stall arithmetic."""

from livemig.observe.heartbeat import Beat, GuestStats, HeartbeatReader, guest_stats, parse_line

__all__ = ["Beat", "GuestStats", "HeartbeatReader", "guest_stats", "parse_line"]
