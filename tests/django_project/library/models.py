from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=200, unique=True)

    def __str__(self) -> str:
        return self.name


class Book(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    title = models.CharField(max_length=200)
    pages = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["author", "title"], name="one_title_per_author")]

    def __str__(self) -> str:
        return self.title
