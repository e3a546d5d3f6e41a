//go:build tools

// Package tools pins kubeconform, so that go.mod and go.sum hold everything `go build` needs.
package tools

import (
	_ "github.com/yannh/kubeconform/cmd/kubeconform"
)
