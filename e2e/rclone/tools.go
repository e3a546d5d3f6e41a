//go:build tools

// Package tools pins rclone's SFTP and FTP backends and its integration suite (fstest/fstests),
// so that go.mod and go.sum hold everything `go test -c` needs to build their test binaries.
package tools

import (
	_ "github.com/rclone/rclone/backend/ftp"
	_ "github.com/rclone/rclone/backend/sftp"
	_ "github.com/rclone/rclone/fstest/fstests"
)
