"""Infrastructure monitoring: servers, disks, pools, arrays, databases."""
