// Command chunkraid is the one binary of the project: daemons and admin commands.
package main

import (
	"os"

	"github.com/chunkraid/chunkraid/cli"
)

func main() { os.Exit(cli.Main()) }
