// Command custos is the Custos client: it inspects jwcexchange messages and
// (in later versions) exchanges keys with and calls a Custos service.
package main

import (
	"fmt"
	"io"
	"os"
)

const usage = `usage: custos COMMAND [ARGS]

Commands:
  inspect FILE   check the keys of an ExchangeRequest or ExchangeResponse
                 (as printed in a log or a document; FILE "-" is stdin)
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes one command and returns the process exit status.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "inspect":
		return cmdInspect(args[1:], stdin, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "custos: unknown command %q\n%s", args[0], usage)
		return 2
	}
}
