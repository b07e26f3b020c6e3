"""The livemig guest: a Debian cloud kernel plus a busybox initramfs with the C workloads."""

from livemig.guest.image import GuestImage, build_image, find_image
from livemig.guest.workload import Workload, parse_workload

__all__ = ["GuestImage", "Workload", "build_image", "find_image", "parse_workload"]
