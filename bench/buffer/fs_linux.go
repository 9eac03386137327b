package main

import (
	"fmt"
	"os"
	"syscall"
)

// describeFS names the file system type of dir and refuses tmpfs, where
// fsync costs nothing and the numbers would mean nothing.
func describeFS(dir string) (string, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "", err
	}
	const tmpfsMagic = 0x01021994
	names := map[int64]string{0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", tmpfsMagic: "tmpfs", 0x794c7630: "overlayfs"}
	name, ok := names[int64(st.Type)]
	if !ok {
		name = fmt.Sprintf("file system type %#x", st.Type)
	}
	if st.Type == tmpfsMagic {
		return "", fmt.Errorf("%s is on tmpfs, where fsync is free: pass -dir on a real disk", dir)
	}
	return name, nil
}

func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
