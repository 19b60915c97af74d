"""HTTP faces. Each only translates: request -> core call, core Job -> its JSON."""
