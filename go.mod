module github.com/proxy-hopper/proxy-hopper

go 1.26.8
