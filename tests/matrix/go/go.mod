module eddy.local/matrix

go 1.19
