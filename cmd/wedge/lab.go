package main

import "fmt"

func lab(args []string) error {
	return fmt.Errorf("lab: not wired yet")
}
