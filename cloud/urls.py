from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("cloud.interfaces.api.urls")),
    path("", include("cloud.interfaces.portal.urls")),
]
